"""How many BLAS threads a run uses: one number, recorded with the run, the same wherever it runs.

A matrix product's sums are split among BLAS threads, and the split decides
how they round: the same run with 1 and with 2 threads differs in the last
bits from the first step on. A run directory promises that a resumed run
ends bit-identical to an uninterrupted one, and a sweep that its runs do not
depend on which worker ran them, so a run's thread count is part of its
config (``train.threads``), set around the run with threadpoolctl, and
reused on resume.

The default is one thread. At this project's laptop scale a second thread
gains little (the demo's nets are small), and several processes at NumPy's
default thread count oversubscribe the cores and run several times slower;
``--threads`` raises it for a large net on a free machine.
"""

from contextlib import contextmanager

DEFAULT_THREADS = 1


@contextmanager
def blas_threads(threads):
    """Run the body with BLAS (and OpenMP) limited to ``threads`` threads.

    Without threadpoolctl (a machine where the project was installed with
    ``--no-deps``, such as the GPU check's) it warns once and leaves BLAS as it is.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        _warn_once()
        yield
        return
    with threadpool_limits(limits=int(threads)):
        yield


_warned = []


def _warn_once():
    if not _warned:
        import warnings

        warnings.warn("threadpoolctl is not installed (pip install threadpoolctl): BLAS runs at its default thread "
                      "count, so CPU results may differ in the last bits from the same run made elsewhere",
                      RuntimeWarning, stacklevel=3)
        _warned.append(True)
