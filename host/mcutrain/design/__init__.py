"""Design-time models of a candidate network on a board: board profiles (boards.py), the
architecture description (arch.py), RAM (memory.py), flash (flash.py) and instruction/cycle
cost (costs.py, calibrated by calibrate.py). docs/cost-model.md."""
