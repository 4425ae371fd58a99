from __future__ import annotations

import sys

from minibt.cli import main

sys.exit(main())
