"""`sweeper slurm`: a SLURM batch script that starts a Ray cluster on its own allocation and runs
one sweep on it.

    sweeper slurm STUDY --nodes N --gpus-per-node G --cpus-per-node C --time HH:MM:SS --store DIR \\
                  [--partition P] [--account A] [--print | --submit] [sweeper run options]

The script follows Ray's documented SLURM pattern: `ray start --head --block` on the first node of
the allocation (where SLURM runs the batch script), `srun --nodes=1 --ntasks=1 -w NODE ray start
--address HEAD --block` on every other node, a wait until the nodes have joined, then `sweeper run
STUDY --address HEAD` on the head. The sweep's exit status becomes the job's. Resubmitting the same
file after a time-limit kill resumes: the store keeps every finished trial and `sweeper run` runs only
the missing ones; the script never deletes or renames anything in the store.

It is a plain text template, not submitit: the user gets a short bash file they can read, edit, keep
beside their results and resubmit with `sbatch`, with the Ray start sequence in plain sight; submitit
would hide it inside a pickled Python callable, add a dependency, and still need this start
sequence.

The script starts its Ray on free ports picked on each node when it starts (a node shared with
another job, or with a second sweep of the same user, has its own Ray on the defaults 6379, 8265,
10001, 52365), with a private `--temp-dir`, and stops only the processes it started, by process id.
It never runs `ray stop`, which kills every Ray of the user on the host, other jobs' included.

With token authentication (the default), every Ray process and the driver read the token from a file
in the user's home directory (`~/.ray/auth_token`, where `ray get-auth-token --generate` puts it),
which SLURM clusters share between login and compute nodes; `--token-file` names another shared
path. The file is created here, on the login node, when it does not exist yet, so that the jobs of a
user never race to create it.

Bad input (a malformed --time, --nodes 0, no `sbatch` with --submit, a study that does not load, a
trial that asks for more CPUs or GPUs than a node has) is refused in one line with exit status 2, and
nothing is written.

One job per module: cli.py (the command: flags, checks, the token file), script.py and template.sh
(the batch script), nodes.py (`python -m sweeper.slurm ...`, what the script runs on the nodes).
"""
