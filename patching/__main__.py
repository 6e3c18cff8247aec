import sys

from patching.cli import main

sys.exit(main())
