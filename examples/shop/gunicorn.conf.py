"""gunicorn settings of the stock service. Each worker says when it is ready: ``run.py``
stops the shop only once every worker has its signal handlers (gunicorn loses a SIGTERM
that reaches a worker still booting, and then waits 30 s for it)."""


def post_worker_init(worker):
    print(f"stock worker {worker.age} ready", flush=True)
