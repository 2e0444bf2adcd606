"""Constants shared by the loaders and transforms."""

#: Label value that losses and metrics ignore (NYUDv2 / SUN RGB-D convention).
IGNORE_INDEX = 255
#: ImageNet statistics for RGB in [0, 1], per channel.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Reference depth preprocessing: 16-bit millimetres x 1/5000 (so 5 m -> 1.0).
REFERENCE_DEPTH_SCALE = 1.0 / 5000.0
NYUDV2_NUM_CLASSES = 40
SUNRGBD_NUM_CLASSES = 37
