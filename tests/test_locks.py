"""file_lock: the one flock helper of the grid's pretrainings, the registry's promotions and the flow."""
import threading
import time

import pytest

from s4d.locks import file_lock


def test_busy_lock_names_the_holder_and_a_waiting_lock_gets_it_after_release(tmp_path):
    path = tmp_path / "sub" / ".x.lock"
    with file_lock(path):
        assert path.is_file()
        with pytest.raises(RuntimeError, match="^someone has it$"):
            with file_lock(path, busy="someone has it"):
                pass
        got = []

        def wait_for_it():
            with file_lock(path):
                got.append(time.monotonic())

        waiter = threading.Thread(target=wait_for_it)
        released = time.monotonic() + 0.3
        waiter.start()
        time.sleep(0.3)
        assert not got  # still waiting while the lock is held
    waiter.join(timeout=10)
    assert got and got[0] >= released
    with file_lock(path, busy="free now"):  # the waiter released it too
        pass
