import sys

from medaid.cli import main

sys.exit(main())
