"""`python -m nanocodec.huffman FILE... [--json]`: see nanocodec.huffman.cli."""
import sys

from nanocodec.huffman.cli import main

sys.exit(main())
