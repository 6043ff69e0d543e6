"""farm: a distributed, multi-GPU render farm for image-to-video generation (I2VGen-XL)."""

__version__ = "0.1.0"
