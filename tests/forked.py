"""`tbot` commands as processes forked from a server that has imported the third-party libraries once (pandas, pyarrow, numba...).

Each command is still a process of its own: its own pid, environment, working folder, stdout and stderr files, and exit code; it
imports tbot itself (tbot's own import-time work and errors happen in it) and runs the console command's `main` as the `tbot`
script does (`sys.exit(main())`: a traceback and exit 1 on an exception), then exits as Python does (threads joined, atexit
callbacks run, output flushed). What it skips is starting Python, importing the libraries and tearing the modules down at exit,
~1-2 s a command, which dominated tests that start a hundred commands. `kill` sends a real SIGKILL to its pid.

    with Forker() as fk:
        pid = fk.start(['data', 'import', src], env=dict(os.environ), cwd=tmp, stdout=tmp/'out', stderr=tmp/'err')
        code = fk.wait(timeout=60)   # the exit code, -9 when killed; None if still running after `timeout`
"""
import json, os, select, signal, subprocess, sys, time
from pathlib import Path

TBOT = str(Path(sys.executable).parent / 'tbot')
# The third-party libraries `tbot` commands import as they start (see `python -X importtime .venv/bin/tbot ...`). A library
# missing here only costs time; tbot's own modules are deliberately not preloaded.
PRELOAD = ['numpy', 'pandas', 'pyarrow', 'pyarrow.parquet', 'pyarrow.feather', 'dateutil', 'numba', 'scipy', 'scipy.stats',
           'yaml', 'ccxt', 'jupyter_client', 'apscheduler']

SERVER = r'''
import atexit, json, os, sys, threading
proto = os.dup(1); os.dup2(2, 1)                     # replies on their own pipe; whatever a library prints goes to stderr
for m in sys.argv[1:]:
    try: __import__(m)
    except ImportError: pass
cmd = os.fdopen(0, 'rb', buffering=0, closefd=False)
def run(job):
    "In the forked child: become `tbot *args` with the job's environment, folder and output files."
    os.close(proto)
    null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0); os.close(null)
    for fd, f in ((1, job['stdout']), (2, job['stderr'])):
        o = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644); os.dup2(o, fd); os.close(o)
    os.chdir(job['cwd']); os.environ.clear(); os.environ.update(job['env'])
    sys.argv = [job['argv0'], *job['args']]
    try:
        from tbot.cli import main
        code = main()                                # the console script: sys.exit(main())
    except SystemExit as e: code = e.code
    except BaseException: sys.excepthook(*sys.exc_info()); code = 1   # the traceback, exit 1
    if not isinstance(code, int | None): print(code, file=sys.stderr); code = 1
    # Python's exit as far as anyone outside the process can see: wait for threads, run atexit callbacks, flush stdout and stderr.
    # Only the teardown of the ~2000 modules is skipped: it took 0.2-0.9 s, more than most commands' work.
    threading._shutdown(); atexit._run_exitfuncs()
    for f in (sys.stdout, sys.stderr):
        try: f.flush()
        except Exception: pass
    os._exit(code or 0)
last = None
while line := cmd.readline():
    if last: os.waitpid(last, 0)                     # reap the previous command only now: until then its pid cannot be reused
    job = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0: run(job)
    os.write(proto, f'{pid}\n'.encode())
    w = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # ended (exit or signal), left a zombie
    os.write(proto, f'{w.si_status if w.si_code == os.CLD_EXITED else -w.si_status}\n'.encode())
    last = pid
if last: os.waitpid(last, 0)
'''

class Forker:
    "A server that has imported `preload`; `start` forks it into one `tbot` command at a time."
    def __init__(self, preload=PRELOAD):
        self.p = subprocess.Popen([sys.executable, '-c', SERVER, *preload], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.buf, self.pid = b'', None

    def _line(self, timeout=None)->str|None:
        end = None if timeout is None else time.monotonic() + timeout
        while b'\n' not in self.buf:
            left = None if end is None else max(0, end - time.monotonic())
            if not select.select([self.p.stdout], [], [], left)[0]: return None
            chunk = os.read(self.p.stdout.fileno(), 4096)
            if not chunk: raise RuntimeError(f'the fork server died (exit {self.p.wait()})')
            self.buf += chunk
        line, self.buf = self.buf.split(b'\n', 1)
        return line.decode()

    def start(self, args, env:dict, cwd, stdout, stderr)->int:
        "Fork `tbot *args`; its pid."
        assert self.pid is None, 'one command at a time'
        job = dict(args=[str(a) for a in args], env=env, cwd=str(cwd), stdout=str(stdout), stderr=str(stderr), argv0=TBOT)
        self.p.stdin.write(json.dumps(job).encode() + b'\n')
        self.pid = int(self._line(timeout=300))
        return self.pid

    def wait(self, timeout=None)->int|None:
        "The command's exit code (negative: killed by that signal), or None if it still runs after `timeout` seconds."
        line = self._line(timeout)
        if line is None: return None
        self.pid = None
        return int(line)

    def kill(self):
        "SIGKILL the command that `wait` has not seen end (an ended one stays a zombie, its pid reserved, until the next `start`)."
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)

    def close(self):
        if self.pid is not None: self.kill(); self.wait()
        self.p.stdin.close(); self.p.wait(timeout=60)

    def __enter__(self): return self
    def __exit__(self, *exc): self.close()
