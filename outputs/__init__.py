"""What a command writes and who owns it: the outputs a command declares, checked against its inputs
and each other before any work starts (folders: Outputs, the run folder of train.py, FolderLock),
the manifest that records which files our programs wrote so that only those are ever replaced
(manifest), and the stop signals that unwind a command so that it leaves nothing half-written
(signals). It imports nothing of ours but `errors`, so that every layer that writes files (training,
retrieval, the command-line programs, tools, demo) can use it."""
