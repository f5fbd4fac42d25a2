# Frozen into the emulated boards' firmware.
include("$(PORT_DIR)/../manifest.py")
freeze("$(PORT_DIR)/modules", "_boot.py")
