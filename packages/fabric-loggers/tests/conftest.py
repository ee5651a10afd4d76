from fabric_utils import TENSORBOARDX

# Importing tensorboardX sets CRC32C_SW_MODE in os.environ (tensorboardX/crc32c.py). Import it once, before any
# test's hygiene snapshot, so that the first test to build a TensorBoardLogger is not blamed for that variable.
if TENSORBOARDX:
    TENSORBOARDX.require("the fabric-loggers tests")
