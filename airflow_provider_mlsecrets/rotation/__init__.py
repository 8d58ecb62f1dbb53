"""Secret rotation: policies, the rotator plugin interface, the shipped rotators and the
rotation DAG. The engine that runs the steps is :mod:`..service.rotation`."""
