"""``python -m edge_agent --config agent.toml``: the same as ``ftte-agent``."""

import sys

from edge_agent.agent import main

sys.exit(main())
