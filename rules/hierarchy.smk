# hierarchy rules (added by the hierarchy stage)
