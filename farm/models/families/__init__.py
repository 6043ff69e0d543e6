"""One module per image-to-video family: its adapter (a `farm.models.adapter.VideoAdapter`),
its tiny random-weight pipeline built in code, and its full-size configuration for parameter
counts on the meta device and GPU checks with random weights. I2VGen-XL, the default, lives in
`farm.models.i2vgen` and `farm.models.tiny`."""
