"""The data: MNIST (mnist.py), image folders (folders.py), the generated shapes (shapes.py), picture
decoding (images.py) and hand-crafted features (features.py). The public names of the first four are
importable from cyconv.data itself."""

from .mnist import *  # noqa: F401,F403
from .mnist import (COLS, DEFAULT_IMAGE_SIZE, DEFAULT_TEST_FRACTION, ENV_VAR, IDX_UBYTE, MIRRORS, ROWS,  # noqa: F401
                    default_data_dir, refusing_decompression_bombs, wide_grey_to_uint8)
