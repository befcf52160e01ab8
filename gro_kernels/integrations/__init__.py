"""Drop-ins for other trainers (TRL, verl, transformers). Optional: importing gro_kernels never imports this
package, and each module here imports its trainer library only when it is itself imported."""
