"""The data: MNIST (mnist.py), image folders (folders.py), the generated shapes (shapes.py), pictures one
file at a time (images.py: decoding, .npy pixels, a drawn digit made MNIST-like) and hand-crafted features
(features.py, also cyconv.features). The public names of the first four are cyconv.data's own."""

from .folders import (DEFAULT_TEST_FRACTION, FolderSpec, ImageFolder, ImageFolderError, ImageSplit,  # noqa: F401
                      channel_stats, normalize)
from .images import (COLS, DEFAULT_IMAGE_SIZE, FOLDER_EXTENSIONS, FOLDER_FORMATS, IMAGE_FORMATS,  # noqa: F401
                     MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, ROWS, ImageError, decode_grey, decode_picture, digit_input,
                     grey_pixels, load_digit, prepare_digit, read_image, refusing_decompression_bombs,
                     wide_grey_to_uint8)
from .mnist import (ENV_VAR, FILES, IDX_UBYTE, MD5, MIRRORS, MNIST, MNIST_MEAN, MNIST_STD,  # noqa: F401
                    MNISTFormatError, MNISTNotFoundError, default_data_dir, download_mnist, ensure_mnist, load_mnist,
                    resolve_data_dir, to_float32)
from .shapes import SHAPES, make_shapes  # noqa: F401

__all__ = ["MNIST", "FILES", "MD5", "MNIST_MEAN", "MNIST_STD", "MNISTFormatError", "MNISTNotFoundError",
           "resolve_data_dir", "load_mnist", "download_mnist", "ensure_mnist", "to_float32", "prepare_digit",
           "ImageError", "ImageFolder", "ImageFolderError", "ImageSplit", "FolderSpec", "read_image",
           "decode_picture", "load_digit", "channel_stats", "normalize", "make_shapes", "SHAPES",
           "FOLDER_EXTENSIONS", "MAX_IMAGE_SIDE"]
