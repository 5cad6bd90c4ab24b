import sys

from connscale.app.cli import main

sys.exit(main())
