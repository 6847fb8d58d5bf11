"""Role "mmu": the pmap (machine-dependent layer) and the CPU's loads and stores."""
