import os
import sys
import threading

from .cli import main

code = main()
if code == 130 and any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
    # Ctrl-C abandoned a transfer blocked in a network read (see download.CANCEL_GRACE_S). Its partial file holds a
    # prefix of the content, checked by sha256 when the next run resumes it: leave now instead of waiting for the
    # read to time out.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
