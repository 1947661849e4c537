"""The Jupyter project's kernel conformance suite (jupyter_kernel_test) against awf-python."""

from __future__ import annotations

import jupyter_kernel_test
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager


@pytest.fixture(scope="class")
def awf_kernel_for_class(request, spec_dir):
    """Starts the class's kernel from our spec (the suite's own setUpClass
    would look only on the default kernel path)."""
    cls = request.cls
    cls.km = KernelManager(kernel_name=cls.kernel_name, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)]))
    cls.km.start_kernel(env={"LANG": "C.UTF-8"})
    cls.kc = cls.km.client()
    cls.kc.start_channels()
    cls.kc.wait_for_ready(timeout=120)
    yield
    cls.kc.stop_channels()
    cls.km.shutdown_kernel()


@pytest.mark.usefixtures("awf_kernel_for_class")
class TestAWFKernelConformance(jupyter_kernel_test.KernelTests):
    kernel_name = "awf-python"
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise ValueError('boom')"
    code_execute_result = [{"code": "1+2+3", "result": "6"}, {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"}]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))", "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))", "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")  # Debian IPython answers range requests empty
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    @classmethod
    def setUpClass(cls):
        """The kernel comes from the awf_kernel_for_class fixture."""

    @classmethod
    def tearDownClass(cls):
        """Shut down by the fixture."""
