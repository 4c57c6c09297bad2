"""`python -m sweeper.slurm ...`: the helpers the batch script runs on the nodes (nodes.py)."""
import sys

from sweeper.slurm.nodes import main

sys.exit(main())
