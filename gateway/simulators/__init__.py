"""Provider simulators: real HTTP servers speaking each vendor's wire format, with faults."""
