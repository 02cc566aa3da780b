from django.apps import AppConfig


class WritingConfig(AppConfig):
    name = "writing"
    verbose_name = "Writing"

    def ready(self) -> None:
        from tasks_app import lifecycle
        from tasks_app.checks import between, register_setting_rules
        from tasks_app.models import TaskState
        from writing import jobs, sections

        register_setting_rules(
            "writing",
            [
                ("JOBS_OUTLINE_PASSAGES", between(1, 100), "between 1 and 100"),
                ("JOBS_MAX_SECTIONS", between(1, 100), "between 1 and 100"),
            ],
        )
        # runs that end outside the body keep the job and its sections in step
        ends = (TaskState.FAILURE, TaskState.REVOKED)
        lifecycle.on_end(
            jobs.OUTLINE_TASK,
            jobs.DOCUMENT_TASK,
            jobs.FINISH_TASK,
            handler=sections.job_task_ended,
            states=ends,
        )
        lifecycle.on_end(
            jobs.SECTION_TASK, handler=sections.section_task_ended, states=ends
        )
        # a retry of a failed job's task reruns the job; a section's is refused
        lifecycle.on_retry(
            jobs.OUTLINE_TASK, jobs.DOCUMENT_TASK, handler=jobs.reopen_for_retry
        )
        lifecycle.on_retry(jobs.SECTION_TASK, handler=jobs.refuse_section_retry)
