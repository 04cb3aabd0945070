"""sightwise.synth: procedural defects, a small class-conditional GAN, quality metrics, the
keep-only-if-it-helps guardrail.
"""
