# Frozen into every mcutrain firmware (unix and emulated boards).
include("$(MPY_LIB_DIR)/mcutrain/manifest.py")
