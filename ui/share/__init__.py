"""Share links (signed, self-contained), the reply MACs they carry, and deep links."""
