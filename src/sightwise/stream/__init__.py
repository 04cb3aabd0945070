"""sightwise.stream: video and camera sources, frame sampling, debounced events (`sightwise watch`)."""
