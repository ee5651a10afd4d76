#!/bin/bash
#SBATCH --job-name=train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2      # one task per device: the same number as Fabric's `devices`
#SBATCH --time=1                 # minutes (a real job: --time=24:00:00)
#SBATCH --signal=B:USR1@30       # SIGUSR1 to this script 30 s before the time limit (a real job: B:USR1@300)
#SBATCH --requeue                # the job may go back to the queue
#SBATCH --open-mode=append       # a requeued job appends to the same log
#SBATCH --output=train-%j.out

# Slurm's warning reaches this script: pass it on to the training tasks (srun forwards SIGUSR1 to each of them), where
# fabric.preempted becomes True, and they save a checkpoint and exit. Then put the job back in the queue: the next
# run resumes from the checkpoint.
preempted=0
trap 'preempted=1; kill -USR1 "$srun_pid"' USR1

srun python train.py "$@" &
srun_pid=$!
while true; do
    wait "$srun_pid"            # returns early when the trap runs: wait again until srun has exited
    status=$?
    kill -0 "$srun_pid" 2>/dev/null || break
done

if [ "$preempted" = 1 ] && [ "$status" = 0 ]; then
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
