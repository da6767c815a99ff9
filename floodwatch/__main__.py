"""`python -m floodwatch` is the local stack; see floodwatch/stack.py."""

import sys

from floodwatch.stack import main

sys.exit(main())
