"""Retention: the controller's sweep that removes what an organisation's windows no longer
allow it to keep (files, batch outputs, fine-tuning checkpoints, usage records, audit
events), every removal audited."""
