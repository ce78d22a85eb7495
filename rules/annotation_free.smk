# annotation-free proposal rules (added by the annotation-free stage)
