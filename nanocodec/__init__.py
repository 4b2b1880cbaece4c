"""nanocodec: train Llama models on the bytes of canonical codecs (JPEG, H.264) and sample from them.

The codec layer lives in submodules (jpeg, huffman, avc, bpe), the data pipeline in prepare/data,
the model in model; kernels/ beside this package holds the Triton kernels.
"""

__version__ = "0.1.0"
