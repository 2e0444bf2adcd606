"""Constants shared by the loaders and transforms."""

#: Label value that losses and metrics ignore (NYUDv2 / SUN RGB-D convention).
IGNORE_INDEX = 255
#: ImageNet statistics for RGB in [0, 1], per channel.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Reference depth preprocessing: NYUDv2 as distributed with the reference stores 16-bit
#: depth in units of 1/5000 m (raw 25000 = 5 m); x 1/5000 gives metres. The generated
#: scenes use the same unit.
REFERENCE_DEPTH_SCALE = 1.0 / 5000.0
#: Fixed maxima of the reference translation code's Taskonomy decoding: 16-bit values
#: (depth after ``log(1 + raw)``) are scaled by ``255 / maximum`` and cast to 8 bits.
TASKONOMY_REFERENCE_MAXIMA: dict[str, float] = {
    "depth_euclidean": 11.1,
    "depth_zbuffer": 11.1,
    "edge_texture": 11355.0,
    "edge_occlusion": 11584.0,
}
NYUDV2_NUM_CLASSES = 40
SUNRGBD_NUM_CLASSES = 37
