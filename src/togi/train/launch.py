"""Starting a run on several processes with torch's own elastic launcher (``torch.distributed.run``, torchrun).

``togi train --nproc-per-node N`` validates the recipe once, writes it resolved to a file, and has torchrun start
``python -m togi train RECIPE`` N times on this node (and on each other node that runs the same command with its
``--node-rank``). Each process then trains as one of the run's ranks (``distributed.py``). A single node needs no
address: torchrun's standalone rendezvous picks a free port on loopback.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from togi.config import TrainConfig
from togi.errors import TogiError
from togi.train.distributed import Processes


@dataclass(frozen=True)
class Launch:
    """Where the processes of a run are: ``nproc_per_node`` on each of ``nnodes`` nodes, this one ``node_rank``."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500

    def check(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise TogiError(f"--nproc-per-node {self.nproc_per_node} --nnodes {self.nnodes}: a run needs at least one process on one node",
                            "give --nproc-per-node 2 or more to train on several processes")
        if not 0 <= self.node_rank < self.nnodes:
            raise TogiError(f"--node-rank {self.node_rank} is not one of the {self.nnodes} nodes (0 to {self.nnodes - 1})",
                            "number the nodes 0, 1, ...; node 0 holds the master address")
        if self.nnodes > 1 and not self.master_addr:
            raise TogiError(f"--nnodes {self.nnodes}: the nodes meet at node 0's address, which --master-addr gives",
                            "run the same command on every node with --master-addr NODE0_HOST --node-rank R")
        if Processes.current().several:
            raise TogiError("togi train --nproc-per-node was started inside a launcher that already started several processes",
                            "drop --nproc-per-node under torchrun or accelerate launch: they start the processes")

    def torchrun_arguments(self) -> list[str]:
        arguments = [f"--nproc-per-node={self.nproc_per_node}"]
        if self.nnodes == 1 and not self.master_addr:
            return [*arguments, "--standalone"]
        return [*arguments, f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}", f"--master-addr={self.master_addr}",
                f"--master-port={self.master_port}"]


def launch_training(launch: Launch, config: TrainConfig, *, resume_dir: Path | None = None) -> None:
    """Train ``config`` (or continue the run in ``resume_dir``, whose recipe ``config`` is) on the processes ``launch``
    describes, and wait for them. The recipe is checked against the machine first, before any process starts. A process
    that fails ends the others and raises TogiError; each process has printed its own error first."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from togi.train.runnable import check_runnable

    launch.check()
    check_runnable(config, processes=launch.nproc_per_node * launch.nnodes)
    if resume_dir is None and config.output_dir is None:  # one name for every process (a default one holds the time)
        from togi.train.run_dir import default_run_dir

        config = config.model_copy(update={"output_dir": default_run_dir(config)})
    with _recipe_file(None if resume_dir else config) as recipe:
        arguments = ["--resume", str(resume_dir)] if resume_dir is not None else [str(recipe)]
        torchrun = get_args_parser().parse_args([*launch.torchrun_arguments(), "--module", "togi", "train", *arguments])
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads is None:  # the cores shared out, rather than torchrun's default of one thread each
            os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // launch.nproc_per_node))
        elastic_log = logging.getLogger("torch.distributed.elastic")
        level = elastic_log.level
        elastic_log.setLevel(logging.CRITICAL)  # its notes on ending the other processes; togi says what failed below
        try:
            run(torchrun)
        except ChildFailedError as error:
            failures = ", ".join(f"rank {rank} " + (f"exited with {failure.exitcode}" if failure.exitcode >= 0 else f"was killed by signal {-failure.exitcode}")
                                 for rank, failure in sorted(error.failures.items()))
            raise TogiError(f"the run on {launch.nproc_per_node * launch.nnodes} processes failed: {failures}",
                            "each process printed its error above; a run that saved a checkpoint continues with "
                            "togi train --resume RUN_DIR --nproc-per-node N") from None
        finally:
            elastic_log.setLevel(level)
            if threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)


@contextmanager
def _recipe_file(config: TrainConfig | None) -> Iterator[Path | None]:
    """The resolved recipe in a temporary file that every process reads (removed when they are done)."""
    if config is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="togi-launch-") as directory:
        path = Path(directory) / "recipe.yaml"
        path.write_text(config.to_yaml(), encoding="utf-8")
        yield path
