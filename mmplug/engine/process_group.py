"""The end of a distributed run: the default process group is destroyed before exit."""
import torch.distributed as dist


def destroy_process_group():
    """Destroy the default process group, where one exists.

    torch asks every process to call ``destroy_process_group()`` before it exits.
    Without it, Gloo's worker threads may still hold work while the interpreter shuts
    down, and the process aborts (``terminate called without an active exception``,
    exit code -6 under torchrun) after a run that finished (seen in a two-process CPU
    training of the test suite). Call it only after the run finished: while other ranks
    wait in a collective, destroying the group can hang them.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
