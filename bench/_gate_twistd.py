"""Run `twistd` unchanged, but stop (SIGSTOP) just before its reactor starts.

Used by mem_per_conn.py to read a client's RSS "after start-up, before
connecting": twistd has imported everything, built the services and called
startService, but the reactor has not run, so at most one connection socket
exists (the pool's first paced connect; its connect() happens in the
reactor). The harness reads /proc, then sends SIGCONT.

usage: python bench/_gate_twistd.py [twistd args...]
"""

import os
import signal
import sys

# The default reactor, the same one twistd would install by itself.
from twisted.internet import reactor
from twisted.scripts.twistd import run

# 'before startup' triggers run inside reactor.run(), after twistd's
# startApplication() and before the first reactor iteration.
reactor.addSystemEventTrigger("before", "startup", os.kill, os.getpid(), signal.SIGSTOP)
sys.argv[0] = "twistd"
run()
