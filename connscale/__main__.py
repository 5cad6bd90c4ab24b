import sys

from connscale.cli import main

sys.exit(main())
