# embedding rules (added by the embedding stage)
