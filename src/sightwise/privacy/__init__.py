"""sightwise.privacy: DICOM input and de-identification, metadata scrubbing, face blurring, audit log."""
