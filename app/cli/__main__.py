import sys

from moatkit.app.cli import main

sys.exit(main())
