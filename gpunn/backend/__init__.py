"""The ground floor: devices (:mod:`.device`) and the numeric primitives every layer and optimizer calls."""
