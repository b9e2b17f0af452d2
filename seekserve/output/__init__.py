"""From engine token ids to client text: detokenizing, stop strings, per-request state."""
