"""Pure logic of the farm: manifests, parameters, ids, job state. Imports only stdlib and pydantic."""
