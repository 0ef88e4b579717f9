"""Work that the sweep driver hands off so that its event loop goes on at once.

Ray Tune's driver handles one event at a time, and a trial that reports waits until the driver has
handled its report (a function trainable reports synchronously). So whatever a driver callback does
slowly (starting a W&B run, logging to it) holds up every running trial. Handed to a `Serial`, it
runs on a thread of its own, in the order it was given, while the driver and the trials go on.
"""
import queue
import threading
import warnings


class Serial:
    """A daemon thread that runs the callables given to `submit`, one after another in order.
    `wait()` returns once everything submitted so far has run. A callable that raises costs a
    warning, never the thread."""

    def __init__(self, name):
        self.tasks = queue.Queue()
        self.thread = threading.Thread(target=self.loop, name=name, daemon=True)
        self.thread.start()

    def loop(self):
        while True:
            fn, args = self.tasks.get()
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - the thread serves the rest of the sweep
                warnings.warn(f"{self.thread.name}: {type(exc).__name__}: {exc}", stacklevel=1)
            finally:
                self.tasks.task_done()

    def submit(self, fn, *args):
        self.tasks.put((fn, args))

    def wait(self):
        self.tasks.join()
