"""Run `twistd` with the what-if patches of _whatif.py applied in-process.

usage: CONNSCALE_BENCH_PATCHES=write_through,direct_dispatch python bench/_patched_twistd.py [twistd args]
(cpu_per_rtt.py --patch and mem_per_conn.py --patch do this for you)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet import reactor  # noqa: E402,F401  (the default reactor, as twistd would pick)
from twisted.scripts.twistd import run  # noqa: E402

from _whatif import apply_from_env  # noqa: E402

apply_from_env()
sys.argv[0] = "twistd"
run()
