"""`python -m medaid.topology up|down|status` (`make up`, `make down`, `make status`)."""

import sys

from medaid.topology.detached import main

sys.exit(main())
