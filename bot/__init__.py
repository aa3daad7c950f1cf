"""labgate control plane: hears forges, decides, records, reports."""
