"""Lightning's model summary, without the FLOPs it cannot count here."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

log = logging.getLogger(__name__)


class NetworkSummary(ModelSummary):
    """The parameters and mode of every network at the start of a fit, as Lightning's ``ModelSummary``.

    Lightning counts FLOPs on the module's ``example_input_array``; a DFAD system trains on noise
    and has none, so Lightning's own summary prints a FLOPs column of zeros and "Total FLOPs: 0".
    This one leaves both out (``benchmarks/networks.py`` counts each network's FLOPs).
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        """Log the summary table without the FLOPs column and total."""
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *columns
        )
        log.info("\n" + "\n".join(line for line in table.splitlines() if "FLOPs" not in line))
