"""vlmprobe: what medical vision-language encoders really see."""
__version__ = "0.2.0"
